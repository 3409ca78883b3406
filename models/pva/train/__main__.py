"""`python -m pva.train {data,run,export,import}`: the trainer's command line (pva.train.cli)."""

from pva.train.cli import main

if __name__ == "__main__":
    main()
