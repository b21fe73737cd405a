"""`python -m imageclf STAGE [args]`, the same as the `imageclf` command."""

from .cli import main

if __name__ == "__main__":
    main()
