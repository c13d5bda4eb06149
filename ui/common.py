"""What every page shares: the run store, the runner, the session's owner id and error display."""

import uuid

import streamlit as st

from tinylora import jobs
from tinylora.store import RunStore, StoreError


@st.cache_resource(show_spinner=False)
def _store_for(home: str) -> RunStore:
    return RunStore(home)


def _leave_pages_directory_mode() -> None:
    """Rerun through app.py when Streamlit ran this page as a `pages/` directory script.

    Until some session has run app.py (and so `st.navigation`), Streamlit 1.67 serves a page URL such as
    /runs by running the page file alone, with a navigation built from the pages/ folder and without
    app.py's page config: after a server restart, a bookmarked page would open without the app around it.
    The rerun runs app.py, which draws the real navigation and then this page. Only a session's first run
    is rerun, since that one carries no click that a rerun would drop. (AppTest starts every run in this
    mode and runs app.py only on a session's first run.)
    """
    from streamlit.runtime.pages_manager import PagesManager

    first_run = "_navigation_checked" not in st.session_state
    st.session_state["_navigation_checked"] = True
    if first_run and PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False  # what st.navigation itself sets on its first call
        st.rerun()


def get_store() -> RunStore:
    """Open the run store for the data directory (`$TINYLORA_HOME`, or ./tinylora-data), or stop with an error.

    Like `page_header`, it puts a page opened straight from its URL inside app.py.
    """
    from tinylora.paths import data_home

    _leave_pages_directory_mode()

    try:
        store = _store_for(str(data_home()))
        if not store.path.exists():
            # The data directory was deleted while the server ran: start a new, empty database there.
            _store_for.clear()
            store = _store_for(str(data_home()))
        store.check()
        return store
    except StoreError as error:
        st.error(str(error))
        st.stop()


def start_runner(store: RunStore) -> None:
    """Start the runner ahead of the first click, so that Train reaches a warm worker; mark dead runs."""
    try:
        jobs.ensure_runner(store.home)
        store.mark_interrupted()
    except (OSError, StoreError) as error:
        st.error(f"could not start the training runner: {error}")


def session_owner() -> str:
    """An id for this browser session, stored with the runs it starts."""
    if "owner" not in st.session_state:
        st.session_state.owner = uuid.uuid4().hex[:12]
    return st.session_state.owner


def page_header(title: str, intro: str) -> None:
    """Draw a page's title and one-line intro; every page calls it first, before it draws anything else."""
    _leave_pages_directory_mode()
    st.title(title)
    st.caption(intro)
