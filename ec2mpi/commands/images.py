"""Handler of bake-image, and the one rule for which image `create` uses by default."""
from __future__ import annotations

from .. import __version__, userdirs
from ..config import DEFAULT_INSTANCE_TYPES
from ..errors import UserError
from .context import Context, Result

EPILOG = ("Launches one builder instance from the base image (default: the latest Amazon "
          "Linux 2023; on the local cloud its stock image) in a default subnet, bakes Python, "
          "Open MPI, mpi4py and this ec2mpi into NODE_PREFIX through user-data (the wheel is "
          "read by a role scoped to that one object), makes the image (ec2mpi-VERSION-TIME, "
          "tagged ec2mpi:version) and waits until it is available. The builder, its role, "
          "profile and objects are removed on success, failure or Ctrl-C. With --default, "
          "create uses the image in this region while ec2mpi stays at this version.")


def where(ctx: Context) -> str:
    """The key of the user's default images: the region, or 'local' for the local cloud."""
    return "local" if ctx.args.local else ctx.aws.region


def cmd_bake_image(ctx: Context, a) -> Result:
    if a.timeout <= 0:
        raise UserError(f"--timeout {a.timeout:g} must be positive", "e.g. --timeout 1800")
    if a.subnet and not a.subnet.startswith("subnet-"):
        raise UserError(f"--subnet {a.subnet!r} is not a subnet id", "give subnet-...")
    from .lifecycle import _image
    image = _image(ctx, a.image or ("stock" if a.local else None), bool(a.local))
    from ..cluster.bake import bake
    bar = ctx.progress("bake-image")
    try:
        result = bake(ctx.manager(progress=bar).ops, image,
                      a.instance_type or DEFAULT_INSTANCE_TYPES[0], a.subnet, a.timeout,
                      poll=1.0 if a.local else 5.0)
    finally:
        bar.finish()
    data = {"image_id": result.image_id, "name": result.name, "version": result.version,
            "region": result.region, "base_image": result.base_image,
            "instance_type": result.instance_type, "builder": result.builder,
            "seconds": result.seconds, "default": bool(a.default),
            "leftovers": result.leftovers}
    text = (f"image {result.image_id} ({result.name}) baked for ec2mpi {result.version} in "
            f"{result.seconds:.0f} s from {result.base_image}")
    if a.default:
        userdirs.remember_image(where(ctx), result.version, result.image_id)
        text += f"\ncreate now uses it by default in {where(ctx)} (--image stock overrides)"
    if result.leftovers:
        text += "\nNOT removed (delete by hand): " + "; ".join(result.leftovers)
        return Result(data, text, status=1)
    return Result(data, text + "\nthe builder, its role and its objects are removed")


def default_image(ctx: Context) -> str | None:
    """create without --image: the image `bake-image --default` stored for this region and
    this ec2mpi version, said on stderr. An image of another version, or one that is gone,
    is never used: create says so and takes the stock path (None)."""
    images = userdirs.default_images(where(ctx))
    mine = images.get(__version__)
    if mine is None:
        if images:
            ctx.say(f"your default image in {where(ctx)} was baked for ec2mpi "
                    f"{', '.join(sorted(images))}, not {__version__}: not using it, the nodes "
                    "boot from the default image (bake one: ec2mpi bake-image --default)")
        return None
    from ..aws.images import Images
    if Images(ctx.aws, "").image(mine) is None:
        ctx.say(f"your default image {mine} no longer exists in {where(ctx)}: not using it "
                "(bake one: ec2mpi bake-image --default)")
        return None
    ctx.say(f"using your default image {mine} (baked for ec2mpi {__version__}; "
            "--image stock for the stock path)")
    return mine
