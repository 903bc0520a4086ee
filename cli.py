"""Run prefcurate from a source checkout: `python cli.py --help`. The app lives in curate.cli."""
from curate.cli import main

if __name__ == "__main__":
    main()
