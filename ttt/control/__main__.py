"""``python -m ttt.control data|evaluate|encode``: the positive control's command line
(:mod:`ttt.control.gain`)."""
from ttt.control.gain import main

raise SystemExit(main())
