from geomkit.cli import main

raise SystemExit(main())
