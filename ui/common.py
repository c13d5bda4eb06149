"""What every page shares: the run store, the runner, the session's owner id and error display."""

import uuid

import streamlit as st

from tinylora import jobs
from tinylora.store import RunStore, StoreError


@st.cache_resource(show_spinner=False)
def _store_for(home: str) -> RunStore:
    return RunStore(home)


def get_store() -> RunStore:
    """Open the run store for the data directory (`$TINYLORA_HOME`, or ./tinylora-data), or stop with an error."""
    from tinylora.paths import data_home

    try:
        return _store_for(str(data_home()))
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
    st.title(title)
    st.caption(intro)
