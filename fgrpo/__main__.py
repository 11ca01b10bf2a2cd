from fgrpo.cli import main

raise SystemExit(main())
