"""TEST DOUBLE for pyACL (``import acl``, from the CANN toolkit). There is no NPU here.

Ray asks pyACL how many chips a node has (``acl.rt.get_device_count()``) and which chip
they are (``acl.get_soc_name()``) when a node starts; this double answers with
``FAKE_ACL_DEVICE_COUNT`` chips (default 2) of type ``FAKE_ACL_SOC`` (default
Ascend310P3), so a test can start Ray the way it starts on an Ascend host after
``source set_env.sh``. Never use it outside tests.
"""

import os

FAKE = True


class rt:  # noqa: N801 - mirrors pyACL's ``acl.rt`` namespace
    @staticmethod
    def get_device_count():
        """``(count, ret)``; ret 0 means success, as in pyACL."""
        return int(os.environ.get("FAKE_ACL_DEVICE_COUNT", "2")), 0


def get_soc_name():
    return os.environ.get("FAKE_ACL_SOC", "Ascend310P3")
