from virtbackup.cli import main

main()
