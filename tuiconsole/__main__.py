from tuiconsole.cli import main

main()
