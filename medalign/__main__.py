"""`python -m medalign` and `torchrun -m medalign` enter here."""
from medalign.cli import main

if __name__ == "__main__":
    main()
