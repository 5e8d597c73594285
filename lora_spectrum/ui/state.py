"""Names of the per-user values kept in ``st.session_state`` that more than one view reads."""

RESULT = "compare_result"  # the last Compare render: plan, cells, status (written by compare, read by insight)
RANK = "rank_state"  # the Rank view's pool of renders, current pair and session counts (written and read by rank)
BASE_SEEN = "base_generation"  # the shared engine's generation this session last drew (a switch elsewhere shows)
BASE_SWITCHED = "base_switched"  # (ok, message) of this session's last switch, shown once after its rerun
FETCHES = "base_fetches"  # repo id -> downloads.BackgroundFetch running for this session (the Base section)
FETCH_SIZES = "base_fetch_sizes"  # repo id -> downloads.RemoteBase: the size shown before a download starts
LANGUAGE = "language"  # the session's language choice: auto, en or zh_CN (ui/language.py)
PENDING = "sidebar_pending"  # sidebar widget values another view asked to show, applied before the sidebar is drawn
OPEN_RENDER = "open_render"  # Compare renders what the sidebar says on its next run, once (an Open path, Render)
