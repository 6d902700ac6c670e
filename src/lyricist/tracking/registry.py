"""The Model Registry (docs/mlflow.md): every trained model a version tagged with its val perplexity and data; the
alias `champion` moves to it only when there is none yet or it beats the champion on the same data."""

from __future__ import annotations

import math

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from lyricist.tracking import store
from lyricist.tracking.inputs import ENCODED_TAG

ALIAS = "champion"
DATA_TAGS = ("data_md5", ENCODED_TAG)  # a version's data: what DVC hashed, what the run read


def register(tracking_uri: str, name: str, model_uri: str, model_id: str | None, run_id: str, val_ppl: float) -> int:
    """The number of the run's model's new version of `name`, the alias moved by the rule above."""
    client = MlflowClient(tracking_uri)
    run_tags = store.with_retry(lambda: client.get_run(run_id)).data.tags
    data = {tag: run_tags.get(tag, "unknown") for tag in DATA_TAGS}
    try:
        store.with_retry(lambda: client.create_registered_model(name))
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = store.with_retry(lambda: client.create_model_version(
        name, model_uri, run_id=run_id, model_id=model_id,
        tags={"val_ppl": repr(float(val_ppl)), **data})).version
    try:
        champion = client.get_model_version_by_alias(name, ALIAS)
    except MlflowException:  # no alias yet
        champion = None
    differ = [tag for tag in DATA_TAGS if champion and champion.tags.get(tag) != data[tag]]
    if champion is None:  # the first version, or none of the versions left holds the alias
        others = sorted(int(v.version) for v in store.with_retry(lambda: client.search_model_versions(f"name='{name}'"))
                        if v.version != version)
        moved, why = True, ("the first" if not others else "no version held it (its version deleted, or the alias "
                            f"removed); earlier versions {', '.join(map(str, others))} remain: "
                            "MlflowClient().set_registered_model_alias picks another")
    elif differ:
        moved, why = False, f"version {champion.version} was trained on other data ({', '.join(differ)})"
    else:
        best = _val_ppl(client, champion)
        moved = val_ppl < best
        why = f"val ppl {val_ppl:.2f} {'<' if moved else '>='} version {champion.version}'s {best:.2f}"
    if moved:
        store.with_retry(lambda: client.set_registered_model_alias(name, ALIAS, version))
    print(f"registered {name} version {version}: {ALIAS} {'is now this version' if moved else 'stays'} ({why})")
    return int(version)


def _val_ppl(client: MlflowClient, version) -> float:
    """The version's val ppl: its tag, else its run's best/val_ppl; -inf for neither (a hand-set champion stays)."""
    if "val_ppl" in version.tags:
        return float(version.tags["val_ppl"])
    metrics = client.get_run(version.run_id).data.metrics if version.run_id else {}
    return metrics.get("best/val_ppl", -math.inf)
