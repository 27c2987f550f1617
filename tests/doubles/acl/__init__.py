"""TEST DOUBLE for pyACL (``import acl``, from the CANN toolkit). There is no NPU here.

Ray asks pyACL how many chips a node has (``acl.rt.get_device_count()``) and which chip
they are (``acl.get_soc_name()``) when a node starts; the harness asks the same inside an
inference actor. This double answers for a host of ``FAKE_ACL_DEVICE_COUNT`` chips
(default 2) of type ``FAKE_ACL_SOC`` (default Ascend310P3), so a test can start Ray the way
it starts on an Ascend host after ``source set_env.sh``. Never use it outside tests.

Visible devices: a current CANN honours ``ASCEND_RT_VISIBLE_DEVICES`` (the process sees the
listed chips, in order, as ordinals 0, 1, ...; reading stops at the first entry that is not a
valid chip id, as CANN documents). With ``FAKE_ACL_IGNORES_VISIBLE=1`` the double behaves
as an older CANN that ignores the variable: every chip is visible, ordinal = physical id.
:func:`visible_chips` is that mapping; the aclruntime double uses it too.
"""

import os

FAKE = True


def _host_chips() -> int:
    return int(os.environ.get("FAKE_ACL_DEVICE_COUNT", "2"))


def visible_chips() -> list:
    """The physical chip ids this process sees, in ordinal order."""
    chips = _host_chips()
    visible = os.environ.get("ASCEND_RT_VISIBLE_DEVICES")
    if visible is None or os.environ.get("FAKE_ACL_IGNORES_VISIBLE") == "1":
        return list(range(chips))
    ids = []
    for entry in visible.split(","):
        if not entry.isdigit() or int(entry) >= chips:
            break
        ids.append(int(entry))
    return ids


class rt:  # noqa: N801 - mirrors pyACL's ``acl.rt`` namespace
    @staticmethod
    def get_device_count():
        """``(count, ret)``; ret 0 means success, as in pyACL."""
        return len(visible_chips()), 0


def get_soc_name():
    return os.environ.get("FAKE_ACL_SOC", "Ascend310P3")
