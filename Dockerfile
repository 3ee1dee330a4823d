# The casetrail services for compose.yaml: one image, one `casetrail serve ...` per container.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY projections ./projections
COPY services ./services
RUN pip install --no-cache-dir .
CMD ["casetrail", "--help"]
