return require "moongate.spec.helpers"
