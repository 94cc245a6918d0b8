"""The one rule for which AWS session a command uses: the local cloud's, or the account's.

The CLI, the shell's commands and the shell's background refresh all open sessions here,
so `--local` means exactly the same thing everywhere.
"""
from __future__ import annotations


def open_session(local: bool, profile: str | None = None, region: str | None = None,
                 progress=None, local_info=None):
    """(AwsSession, LocalCloudInfo or None). With `local`, the local cloud is started if
    it is down (progress(done, total, message) reports that); its region is fixed."""
    if local:
        from .localcloud import control
        info = local_info or control.ensure_up(progress=progress)
        return control.session(info), info
    from .aws.session import AwsSession
    return AwsSession(profile=profile, region=region), None
