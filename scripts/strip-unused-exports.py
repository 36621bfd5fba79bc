"""Removes from the filter's .wasm the proxy-wasm callbacks it does not use (body, trailers, log,
connection and gRPC callbacks). Envoy calls only the callbacks a module exports, and the SDK exports
them all: without this, every ~16 KiB slice of a /metrics response enters the VM for nothing
(about 100 us per 225 KB scrape, see BENCHMARKS.md). A missing callback means "continue" to Envoy,
exactly what the SDK's default answers; wasm-opt then drops the code behind them. Only the export
section is rewritten. Part of `just build`.

usage: strip-unused-exports.py in.wasm out.wasm
"""
import sys
src,dst=sys.argv[1],sys.argv[2]
drop=set("""proxy_on_request_body proxy_on_request_trailers proxy_on_response_headers proxy_on_response_body
proxy_on_response_trailers proxy_on_log proxy_on_downstream_data proxy_on_upstream_data proxy_on_new_connection
proxy_on_downstream_connection_close proxy_on_upstream_connection_close proxy_on_grpc_close proxy_on_grpc_receive
proxy_on_grpc_receive_initial_metadata proxy_on_grpc_receive_trailing_metadata proxy_on_queue_ready proxy_on_foreign_function""".split())
d=open(src,'rb').read()
def leb(b,i):
    r=s=0
    while True:
        x=b[i];i+=1;r|=(x&0x7f)<<s;s+=7
        if x<0x80:return r,i
def enc(n):
    out=bytearray()
    while True:
        x=n&0x7f;n>>=7
        if n: out.append(x|0x80)
        else: out.append(x); return bytes(out)
out=bytearray(d[:8]);i=8
while i<len(d):
    sid=d[i];i+=1;size,j=leb(d,i);body=d[j:j+size];i=j+size
    if sid==7:
        k=0;n,k=leb(body,k);keep=[]
        for _ in range(n):
            st=k;l,k=leb(body,k);nm=body[k:k+l].decode();k+=l;k+=1;_,k=leb(body,k)
            if nm not in drop: keep.append(body[st:k])
        body=enc(len(keep))+b''.join(keep)
    out+=bytes([sid])+enc(len(body))+body
open(dst,'wb').write(out)
print(len(d),len(out))
