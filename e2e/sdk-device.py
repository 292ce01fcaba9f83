# One device of the whole-system test (e2e/tests/system.rs), on the unmodified Azure IoT Python SDK
# (azure-iot-device, from the venv .ci/setup-deps builds), driven line by line:
#   argv: PROVISIONING_HOST ID_SCOPE GROUP_KEY REGISTRATION_ID CA_BUNDLE
#   prints {"status", "hub", "device", "substatus"} once provisioned through the router and connected
#   to the hub it was given (port 8883 and 443 are the SDK's own: the hub needs an address of its own);
#   then reads commands:
#     send TAG       send one QoS 1 message (id REG-TAG); prints "acked TAG" once PUBACKed
#     stream N       send N messages (ids REG-s0 ...) back to back, "acked sK" for each
#     report K JSON  patch the reported property K to the JSON value; prints "reported K" once answered
#     twin           read the whole twin from the hub; prints "twin " and its reported properties
#     reprovision    disconnect, provision again through the router and connect to the hub it names;
#                    prints the same JSON line as at the start
#     quit           disconnect and exit 0
#   and prints "c2d BODY" for each cloud-to-device message; direct methods are answered with
#   {"echo": payload}. The SDK reconnects by itself when the hub goes away (pod restarts); a send whose
#   own connect is refused is retried for up to 60 s, as a device application would.
import base64, hashlib, hmac, json, sys, time
from azure.iot.device import IoTHubDeviceClient, Message, MethodResponse, ProvisioningDeviceClient
from azure.iot.device.exceptions import ConnectionDroppedError, ConnectionFailedError

host, scope, group_key, reg, ca_file = sys.argv[1:6]
ca = open(ca_file).read()
key = base64.b64encode(hmac.new(base64.b64decode(group_key), reg.encode(), hashlib.sha256).digest()).decode()
client = None


def on_message(msg):
    print("c2d " + msg.data.decode(), flush=True)


def on_method(req):
    client.send_method_response(MethodResponse.create_from_method_request(req, 200, {"echo": req.payload}))


def assign():
    """Provisions through the router and connects to the hub it names; exits 2 when not assigned."""
    global client
    result = ProvisioningDeviceClient.create_from_symmetric_key(
        provisioning_host=host, registration_id=reg, id_scope=scope, symmetric_key=key,
        server_verification_cert=ca).register()
    state = result.registration_state
    if result.status != "assigned":
        print(json.dumps({"status": result.status, "hub": None, "device": None, "substatus": None}), flush=True)
        sys.exit(2)
    client = IoTHubDeviceClient.create_from_symmetric_key(
        symmetric_key=key, hostname=state.assigned_hub, device_id=state.device_id,
        server_verification_cert=ca)
    client.on_message_received = on_message
    client.on_method_request_received = on_method
    client.connect()
    print(json.dumps({"status": result.status, "hub": state.assigned_hub, "device": state.device_id,
                      "substatus": state.sub_status}), flush=True)


assign()


def send(tag):
    m = Message(json.dumps({"tag": tag}))
    m.message_id = "%s-%s" % (reg, tag)
    m.content_type = "application/json"
    m.content_encoding = "utf-8"
    # send_message returns once PUBACKed and rides out a reconnect the SDK is already making, but it
    # raises when the connect it starts itself fails: right after a hub pod rolls, the Service can
    # still have no endpoint for a moment (kube-proxy refuses the connection). A device application
    # retries then, and so does this one, for a bounded time.
    deadline = time.monotonic() + 60
    while True:
        try:
            client.send_message(m)
            break
        except (ConnectionFailedError, ConnectionDroppedError) as e:
            if time.monotonic() > deadline:
                raise
            print("send %s: %r, retrying" % (tag, e), file=sys.stderr, flush=True)
            time.sleep(1)
    print("acked " + tag, flush=True)


for line in sys.stdin:
    words = line.split()
    if not words:
        continue
    if words[0] == "send":
        send(words[1])
    elif words[0] == "stream":
        for i in range(int(words[1])):
            send("s%d" % i)
    elif words[0] == "report":
        client.patch_twin_reported_properties({words[1]: json.loads(" ".join(words[2:]))})
        print("reported " + words[1], flush=True)
    elif words[0] == "twin":
        print("twin " + json.dumps(client.get_twin()["reported"]), flush=True)
    elif words[0] == "reprovision":
        client.shutdown()
        assign()
    elif words[0] == "quit":
        break
client.shutdown()
