"""User-facing errors: one line that names the problem and the fix, and an exit status.

Everything the CLI and the shell show to a user is one of these; anything else that
escapes is a bug and gets a traceback.
"""


class Ec2mpiError(Exception):
    """Base class: `str(err)` is the one-line message shown to the user."""

    exit_status = 1

    def __init__(self, message: str, hint: str = ""):
        self.message = message
        self.hint = hint
        super().__init__(f"{message}; {hint}" if hint else message)


class UserError(Ec2mpiError):
    """Bad input or a precondition the user can fix (exit 2). Nothing was created."""

    exit_status = 2


class CloudError(Ec2mpiError):
    """AWS (or the local cloud) refused or failed: which call, why, what to try (exit 1)."""

    exit_status = 1


class WaitTimeout(CloudError):
    """A wait ran out; the message names what is still missing."""


class BootFailed(CloudError):
    """A node's boot gave up for good (its agent recorded why): waiting longer cannot help."""


def explain_client_error(operation: str, err: Exception) -> CloudError:
    """Turn a botocore ClientError into a CloudError that says what to try."""
    code = getattr(err, "response", {}).get("Error", {}).get("Code", type(err).__name__)
    msg = getattr(err, "response", {}).get("Error", {}).get("Message", str(err))
    hints = {
        "InsufficientInstanceCapacity": "try other instance types (--instance-type a,b,c), "
                                        "another region, or --on-demand",
        "SpotMaxPriceTooLow": "spot capacity is scarce for these types; add more types or use "
                              "--on-demand",
        "MaxSpotInstanceCountExceeded": "your spot quota is exhausted; request a quota increase "
                                        "or use fewer nodes",
        "VcpuLimitExceeded": "your vCPU quota is too low; request an increase in Service Quotas "
                             "or use fewer nodes",
        "InstanceLimitExceeded": "your instance quota is too low; request an increase or use "
                                 "fewer nodes",
        "UnauthorizedOperation": "your AWS identity lacks this permission; see README 'IAM "
                                 "permissions'",
        "AccessDenied": "your AWS identity lacks this permission; see README 'IAM permissions'",
        "AccessDeniedException": "your AWS identity lacks this permission; see README 'IAM "
                                 "permissions'",
        "RequestLimitExceeded": "AWS is throttling this account; wait a minute and retry",
        "ThrottlingException": "AWS is throttling this account; wait a minute and retry",
    }
    return CloudError(
        f"AWS refused {operation}: {code}: {msg}",
        hints.get(code, "check the message above, then re-run the same command: it resumes "
                        "where it stopped"),
    )
