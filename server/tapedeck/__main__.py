from tapedeck.cli import main

raise SystemExit(main())
