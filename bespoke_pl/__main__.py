from bespoke_pl.commands.cli import main

if __name__ == "__main__":
    main()
