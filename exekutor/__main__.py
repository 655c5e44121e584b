from exekutor.cli import main

main()
