from mezzo.cli.main import main

main()
