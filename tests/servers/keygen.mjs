// Key pairs for the client-authentication tests, in the PEM encodings users have: `node keygen.mjs <type> <format>`
// with type rsa | p256 | p384 | ed25519 and format pkcs1 (RSA) | sec1 (EC) | pkcs8. Prints JSON { private, public }.
import crypto from 'node:crypto';

const [type, format] = process.argv.slice(2);
const { privateKey, publicKey } = type === 'rsa'
  ? crypto.generateKeyPairSync('rsa', { modulusLength: 2048 })
  : type === 'ed25519'
    ? crypto.generateKeyPairSync('ed25519')
    : crypto.generateKeyPairSync('ec', { namedCurve: type === 'p256' ? 'P-256' : 'P-384' });
console.log(JSON.stringify({
  private: privateKey.export({ type: format, format: 'pem' }),
  public: publicKey.export({ type: 'spki', format: 'pem' }),
}));
