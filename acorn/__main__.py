from acorn.cli import main

raise SystemExit(main())
