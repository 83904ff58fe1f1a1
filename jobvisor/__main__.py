from jobvisor.cli import main

raise SystemExit(main())
