"""``python -m coordgan_cli`` (also the torchrun entry point)."""

from coordgan_cli.cli import main

if __name__ == "__main__":
    main()
