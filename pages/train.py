"""Train: pick a method and its settings, start a run in a worker, and watch it learn."""

import streamlit as st

from tinylora import jobs
from tinylora.config import RunConfig
from tinylora.store import Run, RunStore, StoreError
from ui.common import get_store, page_header, session_owner, start_runner
from ui.controls import LOAD_REQUEST, apply_config_to_widgets, config_from_widgets, run_config_controls
from ui.run_view import empty_charts, live_run_view

store = get_store()
start_runner(store)
page_header("Train", "Pick a fine-tuning method and its hyperparameters, press Train, and watch a 202K-parameter "
                     "transformer learn on this CPU. The run trains in a worker process, so clicks, page switches "
                     "and refreshes never stop it.")


# Pages that show the runs of other kinds, for a run id in this page's URL that is not a training run.
PAGE_OF_KIND = {"adapters": ("pages/adapters.py", "Adapters"), "forgetting": ("pages/forgetting.py", "Forgetting"),
                "learns_less": ("pages/forgetting.py", "Forgetting"), "sweep": ("pages/sweep.py", "Sweep")}
SHOWN_KINDS = ("train", "upload")  # kinds whose run view this page draws


SHOWN_RUN = "_train_shown"  # session key: the id of the last run this page showed


def active_run_of_session(store: RunStore, owner: str) -> Run | None:
    """Return this browser session's queued or running training run, if any.

    That is the newest active run the session started, or else the last run the page showed while it is
    still active: a refresh starts a new session, which then finds the run it reopened from the URL. The
    store, not the URL, is the record: two clicks a few milliseconds apart send two reruns that both carry
    the URL from before the first click, so a guard on the URL alone lets the second start a duplicate.
    """
    runs = store.list_runs(kind="train", statuses=("queued", "running"))
    shown_id = st.session_state.get(SHOWN_RUN)
    return (next((run for run in runs if run.owner == owner), None)
            or next((run for run in runs if run.id == shown_id), None))


def start_run() -> None:
    """Queue a run with the settings drawn in the last script run (a button callback, before the rerun)."""
    run_id = st.query_params.get("run")
    current = store.get_run(run_id) if run_id else None
    if current is None or not current.active:
        current = active_run_of_session(store, session_owner())
    config, _ = config_from_widgets("train_")  # with any value typed just before the click
    if current is not None and current.active:
        st.query_params["run"] = current.id
        st.session_state._train_notice = f"Run {current.id} is still {current.status}; stop it before starting another."
    elif config is None:
        st.session_state._train_notice = "The settings are invalid; fix the error shown under them."
    else:
        try:
            new_id = jobs.submit(store, "train", config.to_dict(), owner=session_owner())
        except (ValueError, StoreError) as error:
            st.session_state._train_notice = str(error)
        else:
            st.query_params["run"] = new_id
            st.session_state._train_loaded = new_id


def stop_run() -> None:
    run_id = st.query_params.get("run")
    if run_id:
        store.request_stop(run_id)


run_id = st.query_params.get("run")
if not run_id:
    # Back on Train from another page (or after a rerun that carried an old URL): show the run still going.
    mine = active_run_of_session(store, session_owner())
    if mine is not None:
        run_id = st.query_params["run"] = mine.id
run = store.get_run(run_id) if run_id else None

# A fresh session on a run's URL, or another page's load request, sets the controls to that run's settings
# before they are drawn. The request is cleared only at the end of a script run that shows its run, because a
# run cut short by the browser's next rerun (which carries the controls' old values) must apply it again.
load_requested = run_id is not None and st.session_state.get(LOAD_REQUEST) == run_id
if run is not None and run.kind == "train" and (load_requested or st.session_state.get("_train_loaded") != run_id):
    if load_requested or "train_method" not in st.session_state:
        try:
            apply_config_to_widgets(RunConfig.from_dict(run.config), "train_")
        except ValueError:
            pass
    st.session_state._train_loaded = run_id

elsewhere = run is not None and run.kind not in SHOWN_KINDS
active = run is not None and run.active and not elsewhere
with st.sidebar:
    st.subheader("Settings")
    config, error = run_config_controls("train_")
    st.session_state._train_config = config
    if error:
        st.error(error, icon=":material/error:")
    col_train, col_stop = st.columns(2)
    col_train.button("Train", type="primary", key="train_button", disabled=active or error is not None,
                     width="stretch", help="Start a run with these settings", on_click=start_run)
    col_stop.button("Stop", key="stop_button", disabled=not active, width="stretch",
                    help="Stop the run; it keeps what it learned so far", on_click=stop_run)

notice = st.session_state.pop("_train_notice", None)
if notice:
    st.info(notice)

if elsewhere:
    page, title = PAGE_OF_KIND.get(run.kind, ("pages/runs.py", "Runs"))
    st.warning(f"Run {run.id} is a {run.kind.replace('_', ' ')} run, not a training run, so this page cannot show "
               f"it. Open it on the {title} page.", icon=":material/warning:")
    st.page_link(page, label=f"Open {title}", icon=":material/arrow_forward:")
    empty_charts("train", config)
elif run_id:
    if run is not None:
        st.session_state[SHOWN_RUN] = run_id
    live_run_view(store, run_id, key="train")
else:
    st.info("Choose settings in the sidebar and press **Train**. The defaults are the reference notebook's LoRA run "
            "(r=4, lora_alpha=8 on qkv and proj, learning rate 5e-3, 8 epochs), which ends at validation accuracy "
            "0.984.", icon=":material/play_circle:")
    empty_charts("train", config)

if load_requested:
    st.session_state.pop(LOAD_REQUEST, None)
