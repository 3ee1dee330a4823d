from benchmarks.harness import main

main()
