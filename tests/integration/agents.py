"""What node agents do, played by the tests against the control plane: register with the
node key the node role's credentials would give (role id : instance id), report ready."""
from ec2mpi.aws.instances import Instances
from ec2mpi.aws.registry import Node, Registry, node_pk


def node_for(aws, name, instance, role=None, slots=2):
    """The Node an agent on `instance` would register (its key, its role from the tag)."""
    roles = Registry(aws).get_cluster(name)["roles"]
    role = role or instance.tags.get("ec2mpi:role", "worker")
    node = Node(instance.instance_id, role, instance.private_ip,
                "ip-" + instance.private_ip.replace(".", "-"), slots, instance.lifecycle,
                instance.instance_type)
    node.key = node_pk(name, roles[role], instance.instance_id)
    return node


def play_agents(aws, name, ids, ready=True):
    """Register each instance as its agent would, then (by default) report it ready."""
    reg = Registry(aws)
    nodes = []
    for inst in Instances(aws, name).instances(ids=ids):
        node = node_for(aws, name, inst)
        reg.put_node(name, node)
        if ready:
            reg.set_node_state(name, node, "ready")
        nodes.append(node)
    return nodes


def master_node(aws, name):
    return next(n for n in Registry(aws).nodes(name) if n.role == "master")
