-- wrk script: POST one ASAP task.request per call, each with its own
-- envelope id (so metering sees distinct tasks).
local counter = 0
local thread_id = 0
-- ASAP_TOKEN, when set, is sent as the delegation chain.
token = os.getenv("ASAP_TOKEN")

function setup(thread)
  thread:set("tid", thread_id)
  thread_id = thread_id + 1
end

function init(args)
  tid = tid or 0
end

request = function()
  counter = counter + 1
  local id = string.format("01JLOAD%02d%017d", tid, counter)
  local body = '{"jsonrpc":"2.0","method":"asap.send","id":"' .. id .. '","params":{"envelope":{"id":"' .. id ..
    '","asap_version":"0.1","sender":"urn:asap:agent:client","recipient":"urn:asap:agent:demo","payload_type":"task.request",' ..
    '"payload":{"conversation_id":"c","skill_id":"echo","input":{"text":"hello"}}}}}'
  local headers = {["Content-Type"] = "application/json", ["X-Idempotency-Key"] = id}
  if token ~= nil and token ~= "" then
    headers["X-ASAP-Delegation-Token"] = token
  end
  return wrk.format("POST", "/asap", headers, body)
end
