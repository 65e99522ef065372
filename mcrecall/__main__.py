from mcrecall.cli import main

raise SystemExit(main())
