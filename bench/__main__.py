"""`python -m bench`: see bench/run.py and bench/RESULTS.md."""

from bench.run import main

main()
