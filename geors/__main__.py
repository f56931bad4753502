"""``python -m geors`` runs the ``geors`` command (for environments where the entry point is not on PATH)."""

from geors.cli.main import main

if __name__ == "__main__":
    main()
