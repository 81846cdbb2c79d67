"""Change windows (gitsync/windows.py and ``windows:`` in gitsync.yaml): open or closed at a
given time, when they open next, and every problem at its line. The time is passed in: no
test depends on the wall clock."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import yaml

from gitsync.checkout import read_tree
from gitsync.manifests.repoconfig import ChangeWindow, load_repo_config
from gitsync.windows import _day_names, crontab, open_until, verdict

UTC = datetime.UTC
WEEKEND = ChangeWindow("deny", "0 16 * * 5", 64 * 3600.0)  # Friday 16:00 → Monday 08:00 UTC


def at(day: int, hour: int, minute: int = 0, tz: datetime.tzinfo = UTC) -> datetime.datetime:
    """December 2026: the 4th is a Friday, the 7th a Monday."""
    return datetime.datetime(2026, 12, day, hour, minute, tzinfo=tz)


def test_a_deny_window_closes_friday_afternoon_to_monday_morning() -> None:
    assert verdict([WEEKEND], at(4, 15, 59)).open
    closed = verdict([WEEKEND], at(4, 16))
    assert not closed.open
    assert closed.opens == at(7, 8)
    assert closed.why == "deny window deny 0 16 * * 5 for 64h UTC"
    assert verdict([WEEKEND], at(6, 12)).opens == at(7, 8)  # Sunday
    assert verdict([WEEKEND], at(7, 8)).open  # the end is open
    assert open_until(WEEKEND, at(5, 0)) == at(7, 8)


def test_day_numbers_are_crontab_s_sunday_zero_not_apscheduler_s_monday() -> None:
    sunday = ChangeWindow("deny", "0 0 * * 0", 24 * 3600.0)
    assert not verdict([sunday], at(6, 12)).open  # the 6th is a Sunday
    assert verdict([sunday], at(7, 12)).open  # Monday
    seven = ChangeWindow("deny", "0 0 * * 7", 24 * 3600.0)
    assert not verdict([seven], at(6, 12)).open
    weekdays = ChangeWindow("allow", "0 9 * * 1-5", 8 * 3600.0)
    assert verdict([weekdays], at(7, 10)).open
    saturday = verdict([weekdays], at(5, 10))
    assert (saturday.open, saturday.opens) == (False, at(7, 9))


def test_allow_windows_close_the_rest_and_deny_wins_over_allow() -> None:
    office = ChangeWindow("allow", "0 9 * * mon-fri", 8 * 3600.0)
    assert verdict([office], at(3, 12)).open
    evening = verdict([office], at(3, 18))
    assert (evening.open, evening.opens) == (False, at(4, 9))
    assert evening.why.startswith("outside every allow window (allow 0 9 * * mon-fri")
    # Friday afternoon: the allow window is open but the deny window wins; the next time
    # both agree is Monday 09:00 (the deny ends at 08:00, outside the allow window).
    friday = verdict([office, WEEKEND], at(4, 16, 30))
    assert (friday.open, friday.opens) == (False, at(7, 9))


def test_time_zones_follow_daylight_saving() -> None:
    berlin = ChangeWindow("deny", "0 16 * * fri", 3600.0, "Europe/Berlin")
    summer = datetime.datetime(2026, 7, 3, 14, 30, tzinfo=UTC)  # 16:30 CEST
    winter = at(4, 15, 30)  # 16:30 CET
    assert not verdict([berlin], summer).open
    assert not verdict([berlin], winter).open
    assert verdict([berlin], at(4, 14, 30)).open


def test_a_window_that_never_opens_says_so() -> None:
    never = ChangeWindow("allow", "0 0 30 2 *", 3600.0)
    closed = verdict([never], at(4, 12))
    assert (closed.open, closed.opens) == (False, None)


def config_text(windows: object) -> str:
    env = {"name": "production", "path": "environments/production", "namespace": "ray-prod",
           "windows": windows}  # fmt: skip
    return yaml.safe_dump({"environments": [env]}, sort_keys=False)


def test_repo_config_reads_windows() -> None:
    text = config_text([{"kind": "deny", "schedule": "0 16 * * 5", "duration": "64h"},
                        {"kind": "allow", "schedule": "0 9 * * 1-5", "duration": "8h",
                         "timeZone": "Europe/Berlin"}])  # fmt: skip
    config, problems = load_repo_config(text)
    assert problems == []
    assert config is not None
    deny, allow = config.environments[0].windows
    assert (deny.kind, deny.duration, deny.timezone) == ("deny", 64 * 3600.0, "UTC")
    assert (allow.kind, allow.timezone) == ("allow", "Europe/Berlin")


@pytest.mark.parametrize(
    ("windows", "problem"),
    [
        ([{"kind": "never", "schedule": "0 16 * * 5", "duration": "1h"}],
         "gitsync.yaml:6: kind must be one of allow, deny"),
        ([{"kind": "deny", "schedule": "0 16 * * 5", "duration": "soon"}],
         "gitsync.yaml:8: duration must be a positive duration such as 90m or 64h"),
        ([{"kind": "deny", "schedule": "0 16 * * 5"}],
         "gitsync.yaml:6: environments[0].windows[0] needs 'duration'"),
        ({"kind": "deny"}, "gitsync.yaml:5: windows must be a list"),
    ],
)  # fmt: skip
def test_repo_config_problems_point_at_the_line(windows: object, problem: str) -> None:
    config, problems = load_repo_config(config_text(windows))
    assert config is None
    assert len(problems) == 1, problems
    assert next(str(p) for p in problems).startswith(problem), problems


@pytest.mark.parametrize(
    ("window", "problem"),
    [
        ({"kind": "deny", "schedule": "0 25 * * 5", "duration": "1h"},
         "gitsync.yaml:6: production: schedule '0 25 * * 5' is not a cron expression"),
        ({"kind": "deny", "schedule": "0 16 * *", "duration": "1h"},
         "gitsync.yaml:6: production: schedule '0 16 * *' is not a cron expression: a schedule has 5"),
        ({"kind": "deny", "schedule": "0 16 * * 5", "duration": "1h", "timeZone": "Mars/Base"},
         "gitsync.yaml:6: production: timeZone 'Mars/Base' is not an IANA time zone"),
    ],
)  # fmt: skip
def test_a_schedule_or_time_zone_that_cannot_be_read_is_a_problem_at_its_line(
    window: dict[str, str], problem: str, tmp_path: Path
) -> None:
    (tmp_path / "gitsync.yaml").write_text(config_text([window]))
    (tmp_path / "environments" / "production").mkdir(parents=True)
    report = read_tree(tmp_path)
    assert report.config is None
    [found] = report.problems
    assert str(found).startswith(problem), found


@pytest.mark.parametrize(
    ("field", "days"),
    [
        ("0-6", "*"),  # every day: APScheduler alone refuses "sun-sat"
        ("*", "*"),
        ("1-5", "mon,tue,wed,thu,fri"),
        ("0", "sun"),
        ("7", "sun"),
        ("5-7", "sun,fri,sat"),
        ("*/2", "sun,tue,thu,sat"),  # crontab's even days, not APScheduler's mon,wed,fri,sun
        ("1-5/2", "mon,wed,fri"),
        ("sat,sun", "sun,sat"),
        ("MON-FRI", "mon,tue,wed,thu,fri"),
    ],
)
def test_day_of_week_is_read_as_crontab_reads_it(field: str, days: str) -> None:
    assert _day_names(field) == days


@pytest.mark.parametrize("field", ["8", "mon-", "funday", "1-5/x", ""])
def test_a_day_of_week_that_is_none_is_refused(field: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message is APScheduler's or ours
        crontab(f"0 3 * * {field}", datetime.UTC)


def test_the_drift_schedule_fires_on_the_crontab_day() -> None:
    """intervals.drift "0 3 * * 0": Sundays at 03:00 UTC (APScheduler alone: Mondays)."""
    cron = crontab("0 3 * * 0", datetime.UTC)
    friday = datetime.datetime(2026, 12, 4, 12, 0, tzinfo=datetime.UTC)
    fire = cron.get_next_fire_time(None, friday)
    assert fire == datetime.datetime(2026, 12, 6, 3, 0, tzinfo=datetime.UTC)
    assert fire.strftime("%A") == "Sunday"
