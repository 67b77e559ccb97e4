from selfevo.cli import main

main()
