"""Every NATS subject and stream name casetrail uses, defined once."""

LOG_STREAM = "CASETRAIL_LOG"
REJECTS_STREAM = "CASETRAIL_REJECTS"

INTAKE_PREFIX = "casetrail.intake"
LOG_PREFIX = "casetrail.log"
REJECTS_PREFIX = "casetrail.rejects"
QUERY_PREFIX = "casetrail.query"
ADMIN_PREFIX = "casetrail.admin"  # operator requests to the projector (services.admin)

INTAKE_ALL = f"{INTAKE_PREFIX}.*"
LOG_ALL = f"{LOG_PREFIX}.*"
REJECTS_ALL = f"{REJECTS_PREFIX}.*.*"
RECORDER_QUEUE = "casetrail-recorders"


def intake(publisher: str) -> str:
    return f"{INTAKE_PREFIX}.{publisher}"


def log(case_id: str) -> str:
    return f"{LOG_PREFIX}.{case_id}"


def rejects(code: str, publisher: str) -> str:
    return f"{REJECTS_PREFIX}.{code}.{publisher}"


def query(name: str) -> str:
    return f"{QUERY_PREFIX}.{name}"


def admin(name: str) -> str:
    return f"{ADMIN_PREFIX}.{name}"


def last_token(subject: str) -> str:
    return subject.rsplit(".", 1)[-1]
