from shadowscale.cli import main

raise SystemExit(main())
