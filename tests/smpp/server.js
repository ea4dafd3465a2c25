// A scripted SMSC for tests/messaging.rs, on the npm `smpp` package's server (installed by
// .ci/run under .peers/smpp). Binds to 127.0.0.1 on a free port, prints one JSON line per
// event on stdout, and exits by itself after SMPP_LIFETIME_MS (default 30 s).
//
// Script: after the ESME binds, the contact +15550100001 writes "hello" to +15550199999
// (deliver_sm). Every submit_sm is answered with message_id smsc-N and followed by a
// delivery receipt; after the first one the contact answers "Ada".
'use strict';
const smpp = require(process.env.SMPP_MODULE || 'smpp');

function log(o) {
  process.stdout.write(JSON.stringify(o) + '\n');
}

const CONTACT = '15550100001';
const NUMBER = '15550199999';

const server = smpp.createServer(function (session) {
  let submits = 0;
  session.on('bind_transceiver', function (pdu) {
    if (pdu.system_id !== process.env.SMPP_SYSTEM_ID || pdu.password !== process.env.SMPP_PASSWORD) {
      log({event: 'bind_refused', system_id: pdu.system_id});
      session.send(pdu.response({command_status: smpp.ESME_RBINDFAIL}));
      session.close();
      return;
    }
    session.send(pdu.response());
    log({event: 'bound', system_id: pdu.system_id, interface_version: pdu.interface_version});
    session.deliver_sm({
      source_addr_ton: 1, source_addr_npi: 1, source_addr: CONTACT,
      dest_addr_ton: 1, dest_addr_npi: 1, destination_addr: NUMBER,
      short_message: 'hello',
    }, function (resp) {
      log({event: 'deliver_sm_resp', status: resp.command_status});
    });
  });
  session.on('submit_sm', function (pdu) {
    submits += 1;
    const id = 'smsc-' + submits;
    session.send(pdu.response({message_id: id}));
    const sm = pdu.short_message;
    const text = sm && typeof sm === 'object' && 'message' in sm ? sm.message : String(sm);
    log({
      event: 'submit_sm', id: id, source: pdu.source_addr, source_ton: pdu.source_addr_ton,
      dest: pdu.destination_addr, dest_ton: pdu.dest_addr_ton, text: text,
      data_coding: pdu.data_coding, registered_delivery: pdu.registered_delivery,
    });
    session.deliver_sm({
      esm_class: 4, source_addr_ton: 1, source_addr: pdu.destination_addr,
      dest_addr_ton: 1, destination_addr: pdu.source_addr,
      short_message: 'id:' + id + ' sub:001 dlvrd:001 submit date:2601010000 done date:2601010000 stat:DELIVRD err:000 text:',
    }, function (resp) {
      log({event: 'receipt_resp', id: id, status: resp.command_status});
    });
    if (submits === 1) {
      setTimeout(function () {
        session.deliver_sm({
          source_addr_ton: 1, source_addr_npi: 1, source_addr: CONTACT,
          dest_addr_ton: 1, dest_addr_npi: 1, destination_addr: NUMBER,
          short_message: 'Ada',
        });
      }, 100);
    }
  });
  session.on('enquire_link', function (pdu) {
    session.send(pdu.response());
  });
  session.on('unbind', function (pdu) {
    session.send(pdu.response());
    session.close();
  });
  session.on('error', function (e) {
    log({event: 'session_error', error: String(e)});
  });
});

server.listen(0, '127.0.0.1', function () {
  log({event: 'listening', port: server.address().port});
});
setTimeout(function () {
  process.exit(0);
}, Number(process.env.SMPP_LIFETIME_MS || 30000));
