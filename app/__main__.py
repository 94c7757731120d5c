"""`python -m app`: run the server as `make run` and the container do."""

from app.transport.serve import main

raise SystemExit(main())
