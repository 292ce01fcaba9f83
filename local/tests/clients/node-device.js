// One device on the unmodified Azure IoT Node.js device SDK, driven by local/tests/node_sdk.rs.
//
//   node node-device.js <http|mqtt> <router address> <id scope> <device key> <registration id> <ca.crt>
//
// Provisions through the router with the given DPS transport (http: DPS over HTTPS, which this SDK
// always sends to port 443; mqtt: DPS over MQTT/TLS on 8883), connects to the assigned hub over
// MQTT/TLS, sends one telemetry message, then answers the direct method `echo` and waits for one
// cloud-to-device message. Each step prints one JSON line on stdout, so the test can act on it:
//   {"step":"assigned","hub":...,"device":...}  {"step":"ready"}  {"step":"method",...}  {"step":"c2d",...}
// It exits 0 once it has answered a method and received a C2D message, 2 on any SDK error.
// The DPS transports take the CA from NODE_EXTRA_CA_CERTS (the test sets it); the hub client takes it
// from setOptions, the way an application hands a private CA to this SDK.
'use strict';

const fs = require('fs');
const { ProvisioningDeviceClient } = require('azure-iot-provisioning-device');
const { SymmetricKeySecurityClient } = require('azure-iot-security-symmetric-key');
const { Http: DpsHttp } = require('azure-iot-provisioning-device-http');
const { Mqtt: DpsMqtt } = require('azure-iot-provisioning-device-mqtt');
const { Client, Message } = require('azure-iot-device');
const { Mqtt: HubMqtt } = require('azure-iot-device-mqtt');

const [transport, router, idScope, deviceKey, registrationId, caFile] = process.argv.slice(2);
const say = (step, fields) => console.log(JSON.stringify({ step, ...fields }));
const fail = (what, err) => {
  console.error(`node-device ${registrationId}: ${what}: ${err && (err.stack || err)}`);
  process.exit(2);
};

const dpsTransport = { http: DpsHttp, mqtt: DpsMqtt }[transport];
if (!dpsTransport) fail('usage', `transport must be http or mqtt, not ${transport}`);

const security = new SymmetricKeySecurityClient(registrationId, deviceKey);
const provisioning = ProvisioningDeviceClient.create(router, idScope, new dpsTransport(), security);
provisioning.register((err, result) => {
  if (err) fail('register', err);
  say('assigned', { hub: result.assignedHub, device: result.deviceId, status: result.status });
  const connectionString =
    `HostName=${result.assignedHub};DeviceId=${result.deviceId};SharedAccessKey=${deviceKey}`;
  const client = Client.fromConnectionString(connectionString, HubMqtt);
  let answered = false;
  let received = false;
  const maybeDone = () => {
    if (answered && received) client.close(() => process.exit(0));
  };
  client.on('error', (e) => fail('hub client', e));
  client.on('message', (msg) => {
    client.complete(msg, (e) => {
      if (e) fail('complete', e);
      say('c2d', { body: msg.getData().toString(), messageId: msg.messageId });
      received = true;
      maybeDone();
    });
  });
  client.setOptions({ ca: fs.readFileSync(caFile, 'utf8') }, (e) => {
    if (e) fail('setOptions', e);
    client.open((e) => {
      if (e) fail('open', e);
      client.onDeviceMethod('echo', (request, response) => {
        response.send(200, { echo: request.payload }, (e) => {
          if (e) fail('method response', e);
          say('method', { payload: request.payload });
          answered = true;
          maybeDone();
        });
      });
      const message = new Message(JSON.stringify({ reading: 1, transport }));
      message.messageId = `${registrationId}-0`;
      message.contentType = 'application/json';
      message.contentEncoding = 'utf-8';
      client.sendEvent(message, (e) => {
        if (e) fail('sendEvent', e);
        say('ready', {});
      });
    });
  });
});
