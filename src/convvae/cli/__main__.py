"""`python -m convvae.cli`: the `convvae` command."""

from convvae.cli.main import main

main()
