// The JavaScript guest of the contract-shape bench (componentize-js): reads
// two of the request's headers and its path, in each shape, and answers two
// header sets. Same behaviour as ../rust and ../python.

const INTEREST = ['x-api-key', 'user-agent'];

function answer(key, ua, path) {
  return {
    setHeaders: [
      ['x-client', key === undefined ? 'anonymous' : key],
      ['x-ua-bytes', String((ua === undefined ? 0 : ua.length) + path.length)],
    ],
  };
}

export const guest = {
  interest() {
    return INTEREST;
  },

  onRequest(req) {
    const headers = req.headers;
    let key;
    let ua;
    for (let i = 0; i < headers.length; i++) {
      const h = headers[i];
      const name = h[0];
      if (name === 'x-api-key') {
        if (key === undefined) key = h[1];
      } else if (name === 'user-agent') {
        if (ua === undefined) ua = h[1];
      } else {
        continue;
      }
      if (key !== undefined && ua !== undefined) break;
    }
    return answer(key, ua, req.path);
  },

  onRequestLazy(req) {
    const key = req.header('x-api-key');
    const ua = req.header('user-agent');
    return answer(key, ua, req.path());
  },
};
