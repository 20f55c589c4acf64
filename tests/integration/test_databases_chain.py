"""Several databases backed up in the same second, against the real server and the Bot API stand-in:
their manifests still make one chain in the order they were made, so none drops out of it."""

import json
from datetime import datetime

from tests.conftest import base_environment, telegram_environment
from tgbackupd.clock import Clock
from tgbackupd.config import load_config
from tgbackupd.fleet import Fleet
from tgbackupd.statefile import open_store
from tgbackupd.states import Trigger
from tgbackupd.storage import BackupDirectory

ONE_SECOND = datetime(2025, 12, 3, 3, 0, 0).astimezone()


class StoppedClock(Clock):
    """Every backup starts in the same second: small databases backed up one after the other do."""

    def now(self) -> datetime:
        return ONE_SECOND


def test_backups_of_several_databases_in_one_second_each_take_a_second_and_stay_in_the_chain(
    tmp_path, make_database, bot_api
):
    first, second = make_database(rows=5), make_database(rows=5)
    # Made in this order; by name in one second they would sort shop, shop_globals, srv.
    (tmp_path / "config.toml").write_text(
        f'[[databases]]\nname = "{first}"\nprefix = "srv"\n\n'
        f'[[databases]]\nname = "{second}"\nprefix = "shop"\nglobals = true\n'
    )
    config = load_config(None, base_environment(tmp_path, first, **telegram_environment(bot_api)))
    store = open_store(config.daemon.state_file).store
    directory = BackupDirectory(config.backup.directory, config.backup.prefix, config.backup_suffix)

    results = Fleet(config, store, directory, clock=StoppedClock()).run(Trigger.MANUAL)

    assert all(result.succeeded for result in results), [result.error for result in results]
    made = [result.file for result in results]
    assert [name.split("_backup_")[1][:15] for name in made] == [
        "20251203_030000",
        "20251203_030001",
        "20251203_030002",
    ]
    manifests = [json.loads(d.content) for d in bot_api.documents() if d.file_name.endswith(".json")]
    assert [m["name"] for m in manifests] == made
    assert [(m.get("previous") or {}).get("name") for m in manifests] == [None, *made[:-1]]
    store.close()
