from hopscope.main import main

raise SystemExit(main())
