from feddmmr.cli import main

main()
