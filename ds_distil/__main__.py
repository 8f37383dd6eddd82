from ds_distil.cli import main

raise SystemExit(main())
