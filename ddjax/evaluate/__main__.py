"""`python -m ddjax.evaluate`: the evaluation suite's command line (`ddjax.suite.cli`)."""
from ddjax.suite.cli import main

if __name__ == '__main__':
  main()
