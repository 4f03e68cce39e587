"""``python -m slimkit`` (and so ``torchrun -m slimkit``)."""
from slimkit.cli import main

if __name__ == "__main__":
    main()
