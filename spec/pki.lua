return require "moongate.spec.pki"
