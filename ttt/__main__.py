from ttt.cli.main import main

raise SystemExit(main())
