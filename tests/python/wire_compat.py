#!/usr/bin/env python3
"""Wire compatibility with csi-addons clients, independent of our .proto files.

Requests are encoded by hand from the csi-addons field numbers (the ones the
Go sidecar's generated code uses), sent with plain grpcio the way grpc-go does
over a Unix socket (":authority localhost"), and the answers are decoded the
same way. Reflection is read with grpcio-reflection, which speaks only
v1alpha. Every served RPC is called; outcomes are checked in Ceph via the rbd
CLI.

Usage: wire_compat.py <rbd-addons binary> <lab.json>
Prints one line per check and closes with "N passed, N failed".
"""

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid

import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

RESULTS = {"passed": 0, "failed": 0}


def check(name, ok, detail=""):
    RESULTS["passed" if ok else "failed"] += 1
    print(f"{'PASS' if ok else 'FAIL'} {name}{': ' + str(detail) if detail and not ok else ''}")


# --- protobuf wire encoding (varint, length-delimited), by field number -----

def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_bytes(num, payload):
    return varint((num << 3) | 2) + varint(len(payload)) + payload


def field_str(num, s):
    return field_bytes(num, s.encode())


def field_bool(num, v):
    return varint(num << 3) + varint(1 if v else 0)


def field_map(num, mapping):
    # map<string,string> entries are messages {key = 1, value = 2}.
    return b"".join(field_bytes(num, field_str(1, k) + field_str(2, v)) for k, v in mapping.items())


def decode(buf):
    """Returns {field number: [values]}; length-delimited values stay bytes."""
    out, i = {}, 0
    while i < len(buf):
        key, i = read_varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, i = read_varint(buf, i)
        elif wire == 2:
            ln, i = read_varint(buf, i)
            val, i = buf[i:i + ln], i + ln
        else:
            raise ValueError(f"unexpected wire type {wire}")
        out.setdefault(num, []).append(val)
    return out


def read_varint(buf, i):
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


# --- requests, per the csi-addons replication field table -------------------

def source_volume(volume_id):
    # ReplicationSource { oneof type { VolumeSource volume = 1 { volume_id = 1 } } }
    return field_bytes(1, field_str(1, volume_id))


def enable_req(volume_id, secrets, params=None, legacy=False):
    # EnableVolumeReplicationRequest: volume_id=1 (deprecated), parameters=2,
    # secrets=3, replication_id=4, replication_source=5
    body = field_map(2, params or {}) + field_map(3, secrets)
    return body + (field_str(1, volume_id) if legacy else field_bytes(5, source_volume(volume_id)))


def disable_req(volume_id, secrets):
    return field_map(3, secrets) + field_bytes(5, source_volume(volume_id))


def promote_like_req(volume_id, secrets, force=False):
    # Promote/Demote/Resync: force=2, parameters=3, secrets=4, replication_source=6
    return field_bool(2, force) + field_map(4, secrets) + field_bytes(6, source_volume(volume_id))


def destination_req(volume_id, secrets):
    # GetReplicationDestinationInfoRequest: secrets=1, replication_source=2
    return field_map(1, secrets) + field_bytes(2, source_volume(volume_id))


def info_req(volume_id, secrets):
    # GetVolumeReplicationInfoRequest: secrets=2, replication_id=3, replication_source=4
    return field_map(2, secrets) + field_bytes(4, source_volume(volume_id))


def call(channel, path, payload, timeout=60):
    fn = channel.unary_unary(path, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    try:
        return grpc.StatusCode.OK, fn(payload, timeout=timeout)
    except grpc.RpcError as e:
        return e.code(), e.details()


def rbd(conf, *args):
    return subprocess.run(["rbd", "-c", conf, *args], capture_output=True, text=True, timeout=60)


def main():
    binary, lab_path = sys.argv[1], sys.argv[2]
    lab = json.load(open(lab_path))
    site = lab["sites"]["a"]
    secrets = {"userID": lab["user"], "userKey": lab["key"]}
    tmp = tempfile.mkdtemp(prefix="wire-compat-")
    sock = os.path.join(tmp, "csi-addons.sock")
    server = subprocess.Popen(
        [binary, "serve", "--metrics-address", "127.0.0.1:0", "--endpoint", f"unix://{sock}",
         "--ceph-csi-config", site["csi_config"],
         "--cluster-mapping", site["cluster_mapping"]],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "server.log"), "w"))
    image = None
    try:
        for _ in range(100):
            if os.path.exists(sock):
                break
            time.sleep(0.1)
        # grpc-go (the csi-addons sidecar) sends ":authority localhost" on Unix
        # sockets; grpcio must be told to, or it sends the path.
        channel = grpc.insecure_channel(f"unix://{sock}", options=[("grpc.default_authority", "localhost")])

        # Reflection (v1alpha, the only version grpcio-reflection speaks).
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        resp = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = sorted(s.name for s in resp.list_services_response.service)
        check("reflection lists exactly the served services", names ==
              ["fence.FenceController", "grpc.health.v1.Health", "identity.Identity",
               "reclaimspace.ReclaimSpaceController", "replication.Controller", "volumegroup.Controller",
               "volumegroupsnapshot.v1.VolumeGroupSnapshot"], names)

        # Identity.
        code, body = call(channel, "/identity.Identity/GetIdentity", b"")
        check("GetIdentity", code == grpc.StatusCode.OK and decode(body)[1][0] == b"rbd.csi.ceph.com", (code, body))
        code, body = call(channel, "/identity.Identity/GetCapabilities", b"")
        caps = sorted(next(iter(decode(c))) for c in decode(body).get(1, [])) if code == grpc.StatusCode.OK else []
        # Capability oneof: service = 1, reclaim_space = 2 (OFFLINE), network_fence = 3
        # (NETWORK_FENCE), volume_replication = 4 (VOLUME_REPLICATION = 1 and
        # GET_REPLICATION_DESTINATION_INFO = 2), volume_group = 5 (six).
        check("GetCapabilities advertises service, reclaim_space, network_fence, volume_replication, volume_group",
              caps == [1, 2, 3, 4, 4] + [5] * 6, caps)
        replication_types = sorted(decode(v).get(1, [0])[0] for c in decode(body).get(1, [])
                                   for k, vs in decode(c).items() if k == 4 for v in vs)
        check("VolumeReplication capabilities are VOLUME_REPLICATION and GET_REPLICATION_DESTINATION_INFO",
              replication_types == [1, 2], replication_types)
        code, body = call(channel, "/identity.Identity/Probe", b"")
        ready = decode(decode(body)[1][0]).get(1, [0])[0] if code == grpc.StatusCode.OK else None
        check("Probe ready", ready == 1, (code, body))

        # Replication, on a real image.
        vol_uuid = str(uuid.uuid4())
        image = f"{lab['pool']}/csi-vol-{vol_uuid}"
        rbd(site["conf"], "create", image, "--size", "8M").check_returncode()
        cid = lab["cluster_id"]
        volume_id = f"0001-{len(cid):04x}-{cid}-{site['pool_id']:016x}-{vol_uuid}"

        code, _ = call(channel, "/replication.Controller/EnableVolumeReplication",
                       enable_req(volume_id, secrets, {"mirroringMode": "snapshot"}))
        info = json.loads(rbd(site["conf"], "info", image, "--format", "json").stdout)
        check("EnableVolumeReplication enables mirroring in Ceph",
              code == grpc.StatusCode.OK and info.get("mirroring", {}).get("state") == "enabled", (code, info))
        code, _ = call(channel, "/replication.Controller/EnableVolumeReplication",
                       enable_req(volume_id, secrets, legacy=True))
        check("EnableVolumeReplication through legacy field 1", code == grpc.StatusCode.OK, code)

        # GetReplicationDestinationInfo: UNAVAILABLE until the peer reports its copy
        # (about 2 s), then the handle with site-b's pool ID from the cluster mapping.
        # Response: replication_destination = 1 { volume = 1 { volume_id = 1 } }.
        deadline = time.time() + 60
        while True:
            code, body = call(channel, "/replication.Controller/GetReplicationDestinationInfo",
                              destination_req(volume_id, secrets))
            if code != grpc.StatusCode.UNAVAILABLE or time.time() > deadline:
                break
            time.sleep(1)
        peer_id = (decode(decode(decode(body)[1][0])[1][0])[1][0].decode()
                   if code == grpc.StatusCode.OK else None)
        want = f"0001-{len(cid):04x}-{cid}-{lab['sites']['b']['pool_id']:016x}-{vol_uuid}"
        check("GetReplicationDestinationInfo gives the handle of the copy on site-b", peer_id == want, (code, body))

        code, body = call(channel, "/replication.Controller/GetVolumeReplicationInfo", info_req(volume_id, secrets))
        check("GetVolumeReplicationInfo answers OK or NOT_FOUND (no sync reported yet)",
              code in (grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND), (code, body))

        def primary():
            info = json.loads(rbd(site["conf"], "info", image, "--format", "json").stdout)
            return info.get("mirroring", {}).get("primary")

        code, detail = call(channel, "/replication.Controller/PromoteVolume", promote_like_req(volume_id, secrets))
        check("PromoteVolume on the primary is OK", code == grpc.StatusCode.OK and primary() is True, (code, detail))
        code, detail = call(channel, "/replication.Controller/DemoteVolume", promote_like_req(volume_id, secrets))
        check("DemoteVolume makes it secondary in Ceph", code == grpc.StatusCode.OK and primary() is False, (code, detail))
        code, detail = call(channel, "/replication.Controller/PromoteVolume", promote_like_req(volume_id, secrets))
        check("PromoteVolume after its own demote makes it primary again",
              code == grpc.StatusCode.OK and primary() is True, (code, detail))
        code, detail = call(channel, "/replication.Controller/ResyncVolume", promote_like_req(volume_id, secrets, force=True))
        check("ResyncVolume on a primary is INVALID_ARGUMENT", code == grpc.StatusCode.INVALID_ARGUMENT, (code, detail))

        # ControllerReclaimSpace: request volume_id = 1, parameters = 2, secrets = 3;
        # response pre_usage = 1, post_usage = 2 (StorageConsumption { usage_bytes = 1 }).
        code, body = call(channel, "/reclaimspace.ReclaimSpaceController/ControllerReclaimSpace",
                          field_str(1, volume_id) + field_map(3, secrets))
        usage = decode(body) if code == grpc.StatusCode.OK else {}
        pre, post = (decode(usage.get(n, [b""])[0]).get(1, [0])[0] for n in (1, 2))
        du = json.loads(rbd(site["conf"], "du", image, "--format", "json").stdout)["images"][0]["used_size"]
        check("ControllerReclaimSpace answers usage as rbd du counts it",
              code == grpc.StatusCode.OK and 1 in usage and 2 in usage and post == du and pre >= post, (code, usage, du))

        code, _ = call(channel, "/replication.Controller/DisableVolumeReplication", disable_req(volume_id, secrets))
        info = json.loads(rbd(site["conf"], "info", image, "--format", "json").stdout)
        check("DisableVolumeReplication disables mirroring in Ceph",
              code == grpc.StatusCode.OK and "mirroring" not in info, (code, info))

        # VolumeGroup: CreateVolumeGroupRequest name = 1, parameters = 2,
        # secrets = 3, volume_ids = 4; the response's VolumeGroup is field 1 with
        # volume_group_id = 1 and volumes = 3 (csi.v1.Volume, volume_id = 2).
        group_name = f"wire-{vol_uuid}"
        create = (field_str(1, group_name) + field_map(2, {"clusterID": cid, "pool": lab["pool"]})
                  + field_map(3, secrets) + field_str(4, volume_id))
        code, body = call(channel, "/volumegroup.Controller/CreateVolumeGroup", create)
        group = decode(decode(body)[1][0]) if code == grpc.StatusCode.OK else {}
        group_id = group.get(1, [b""])[0].decode()
        members = [decode(v).get(2, [b""])[0].decode() for v in group.get(3, [])]
        rbd_group = f"{lab['pool']}/csi-vol-group-{group_id[-36:]}"
        listed = rbd(site["conf"], "group", "image", "ls", rbd_group).stdout
        check("CreateVolumeGroup makes an RBD group with the volume",
              code == grpc.StatusCode.OK and members == [volume_id] and f"csi-vol-{vol_uuid}" in listed, (code, body, listed))
        code, _ = call(channel, "/volumegroup.Controller/DeleteVolumeGroup", field_str(1, group_id) + field_map(2, secrets))
        check("DeleteVolumeGroup with a member is FAILED_PRECONDITION", code == grpc.StatusCode.FAILED_PRECONDITION, code)
        code, _ = call(channel, "/volumegroup.Controller/ModifyVolumeGroupMembership", field_str(1, group_id) + field_map(3, secrets))
        check("ModifyVolumeGroupMembership to no members", code == grpc.StatusCode.OK, code)
        code, _ = call(channel, "/volumegroup.Controller/DeleteVolumeGroup", field_str(1, group_id) + field_map(2, secrets))
        check("DeleteVolumeGroup of the empty group", code == grpc.StatusCode.OK, code)
        code, _ = call(channel, "/volumegroup.Controller/ControllerGetVolumeGroup", field_str(1, group_id) + field_map(2, secrets))
        check("ControllerGetVolumeGroup of a deleted group is NOT_FOUND", code == grpc.StatusCode.NOT_FOUND, code)

        # NetworkFence: Fence/Unfence request parameters = 1, secrets = 2, cidrs = 3
        # (CIDR { cidr = 1 }); ListClusterFence request parameters = 1, secrets = 2,
        # response cidrs = 1. A documentation range only (RFC 5737).
        fence_body = field_map(1, {"clusterID": cid}) + field_map(2, secrets) + field_bytes(3, field_str(1, "198.51.100.0/28"))

        def blocklisted():
            out = subprocess.run(["ceph", "-c", site["conf"], "osd", "blocklist", "ls"], capture_output=True,
                                 text=True, timeout=60)
            return "198.51.100.0:0/28" in out.stdout + out.stderr

        code, detail = call(channel, "/fence.FenceController/FenceClusterNetwork", fence_body)
        check("FenceClusterNetwork blocklists the range in Ceph", code == grpc.StatusCode.OK and blocklisted(),
              (code, detail))
        code, body = call(channel, "/fence.FenceController/ListClusterFence",
                          field_map(1, {"clusterID": cid}) + field_map(2, secrets))
        listed = [decode(c).get(1, [b""])[0].decode() for c in decode(body).get(1, [])] if code == grpc.StatusCode.OK else []
        check("ListClusterFence lists the fenced range", "198.51.100.0/28" in listed, (code, listed))
        code, detail = call(channel, "/fence.FenceController/UnfenceClusterNetwork", fence_body)
        check("UnfenceClusterNetwork removes the range from Ceph", code == grpc.StatusCode.OK and not blocklisted(),
              (code, detail))
        code, _ = call(channel, "/fence.FenceController/GetFenceClients",
                       field_map(1, {"clusterID": cid}) + field_map(2, secrets))
        check("GetFenceClients is UNIMPLEMENTED for RBD", code == grpc.StatusCode.UNIMPLEMENTED, code)

        code, detail = call(channel, "/replication.Controller/EnableVolumeReplication",
                            enable_req(volume_id, {"userID": lab["user"]}))
        check("missing userKey is INVALID_ARGUMENT", code == grpc.StatusCode.INVALID_ARGUMENT, (code, detail))

        # Bytes that are no protobuf message: a field tag with wire type 7, a
        # truncated varint, a length running past the end. The fault is the
        # sender's, so INVALID_ARGUMENT (prost's codec alone says INTERNAL).
        for name, garbage in [("wire type 7", b"\x0f"), ("truncated varint", b"\x08\xff"),
                              ("length past the end", b"\x0a\x7fab")]:
            for path in ["/replication.Controller/PromoteVolume", "/volumegroup.Controller/CreateVolumeGroup",
                         "/identity.Identity/GetCapabilities"]:
                code, detail = call(channel, path, garbage)
                check(f"undecodable request ({name}) to {path} is INVALID_ARGUMENT",
                      code == grpc.StatusCode.INVALID_ARGUMENT, (code, detail))
        check("error text holds no key", lab["key"] not in str(detail))
    finally:
        if image:
            rbd(site["conf"], "rm", "--no-progress", image)
        server.terminate()
        server.wait(timeout=30)
    check("socket removed on SIGTERM", not os.path.exists(sock))
    print(f"{RESULTS['passed']} passed, {RESULTS['failed']} failed")
    return 0 if RESULTS["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
